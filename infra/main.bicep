// Referrals API: everything the service needs, in one subscription-scope deployment.
//
//   az deployment sub create --name referrals-<env> --location <region> \
//     --template-file infra/main.bicep --parameters infra/main.parameters.json \
//     --parameters environmentName=<env> authAudience=<api-app-id>
//
// The deployment creates the resource group, then deploys the local modules into it.
// See infra/README.md for prerequisites, publishing and partner onboarding.
targetScope = 'subscription'

metadata description = 'Referrals API on Azure Functions Flex Consumption with identity-only access to Storage and Application Insights.'

@description('Short environment name, for example dev, test or prod: lowercase letters, digits and hyphens. It names the resource group and, with the subscription and region, seeds the unique suffix of every other resource name.')
@minLength(1)
@maxLength(20)
param environmentName string

@description('Azure region of every resource; defaults to the deployment location. It must offer Flex Consumption: az functionapp list-flexconsumption-locations.')
param location string = deployment().location

@description('Name of the resource group to create. Empty means rg-referrals-<environmentName>.')
param resourceGroupName string = ''

@description('Application (client) id of the API app registration. Entra v2 access tokens (accessTokenAcceptedVersion 2) carry exactly this GUID as their audience (aud), never the api:// URI.')
@minLength(36)
@maxLength(36)
param authAudience string

@description('Home tenant id of the API app registration. Defaults to the tenant of this deployment.')
@minLength(36)
@maxLength(36)
param authTenantId string = tenant().tenantId

@description('Tenant ids of onboarded partner organisations whose tokens the API accepts. Empty means the home tenant only.')
param authAllowedTenantIds array = []

@description('Replication SKU of the storage account. Standard_LRS suits dev and test; prefer Standard_ZRS or Standard_GZRS in production.')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
  'Standard_RAGRS'
  'Standard_RAGZRS'
])
param storageSkuName string = 'Standard_LRS'

@description('Name of the table that stores the referrals.')
param referralsTableName string = 'Referrals'

@description('Upper bound on the number of instances the function app scales out to.')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 100

@description('Memory of each function app instance, in MB.')
@allowed([
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Days the Log Analytics workspace keeps logs and telemetry.')
@minValue(30)
@maxValue(730)
param logRetentionInDays int = 30

// Same subscription + environment + region always gives the same suffix (redeploys are idempotent);
// any other combination gives a different one, so two environments never collide on global names.
var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = {
  application: 'referrals-api'
  environment: environmentName
}
var names = {
  resourceGroup: empty(resourceGroupName) ? 'rg-referrals-${environmentName}' : resourceGroupName
  identity: 'id-referrals-${resourceToken}'
  logAnalytics: 'log-referrals-${resourceToken}'
  applicationInsights: 'appi-referrals-${resourceToken}'
  storageAccount: 'st${resourceToken}'
  plan: 'plan-referrals-${resourceToken}'
  functionApp: 'func-referrals-${environmentName}-${resourceToken}'
  deploymentContainer: 'app-package'
}

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: names.resourceGroup
  location: location
  tags: tags
}

module identity 'modules/identity.bicep' = {
  name: 'referrals-identity'
  scope: rg
  params: {
    name: names.identity
    location: location
    tags: tags
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'referrals-monitoring'
  scope: rg
  params: {
    logAnalyticsName: names.logAnalytics
    applicationInsightsName: names.applicationInsights
    location: location
    tags: tags
    retentionInDays: logRetentionInDays
  }
}

module storage 'modules/storage.bicep' = {
  name: 'referrals-storage'
  scope: rg
  params: {
    name: names.storageAccount
    location: location
    tags: tags
    skuName: storageSkuName
    tableName: referralsTableName
    deploymentContainerName: names.deploymentContainer
  }
}

module roleAssignments 'modules/role-assignments.bicep' = {
  name: 'referrals-role-assignments'
  scope: rg
  params: {
    principalId: identity.outputs.principalId
    storageAccountName: storage.outputs.name
    applicationInsightsName: monitoring.outputs.applicationInsightsName
  }
}

module functionApp 'modules/function-app.bicep' = {
  name: 'referrals-function-app'
  scope: rg
  params: {
    planName: names.plan
    appName: names.functionApp
    location: location
    tags: tags
    identityName: identity.outputs.name
    storageAccountName: storage.outputs.name
    deploymentContainerName: storage.outputs.deploymentContainerName
    tableServiceUri: storage.outputs.tableEndpoint
    referralsTableName: storage.outputs.tableName
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    authAudience: authAudience
    authTenantId: authTenantId
    authAllowedTenants: join(authAllowedTenantIds, ',')
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
  }
  // Roles first, so the host never starts without access to its storage.
  dependsOn: [
    roleAssignments
  ]
}

output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output RESOURCE_GROUP_NAME string = rg.name
output FUNCTION_APP_NAME string = functionApp.outputs.name
output FUNCTION_APP_DEFAULT_HOSTNAME string = functionApp.outputs.defaultHostName
output FUNCTION_APP_URL string = 'https://${functionApp.outputs.defaultHostName}'
output STORAGE_ACCOUNT_NAME string = storage.outputs.name
output STORAGE_TABLE_ENDPOINT string = storage.outputs.tableEndpoint
output REFERRALS_TABLE_NAME string = storage.outputs.tableName
output MANAGED_IDENTITY_CLIENT_ID string = identity.outputs.clientId
output APPLICATION_INSIGHTS_NAME string = monitoring.outputs.applicationInsightsName
