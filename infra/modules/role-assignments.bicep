metadata description = 'Least-privilege data-plane roles for the function app identity. No control-plane roles, nothing above the storage account or the Application Insights component.'

@description('Principal (object) id of the user-assigned managed identity that receives the roles.')
param principalId string

@description('Name of the storage account that holds the Referrals table and the Functions host data.')
param storageAccountName string

@description('Name of the Application Insights component the app sends telemetry to.')
param applicationInsightsName string

// Built-in role definition ids (the same in every tenant):
// https://learn.microsoft.com/azure/role-based-access-control/built-in-roles
// Storage Blob Data Owner: Functions host storage (leases, keys, timers) and the Flex deployment package.
var storageBlobDataOwnerRoleId = 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
// Storage Table Data Contributor: read, insert, update and delete entities of the Referrals table.
var storageTableDataContributorRoleId = '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
// Monitoring Metrics Publisher: Entra-authenticated ingestion into Application Insights.
var monitoringMetricsPublisherRoleId = '3913510d-42f4-4e42-8a64-420c390055eb'
// Storage Queue Data Contributor is deliberately absent: an HTTP-only app on Flex Consumption uses no
// queues (no queue or blob triggers, no Durable Functions). Add it when such a trigger is introduced.

resource storageAccount 'Microsoft.Storage/storageAccounts@2024-01-01' existing = {
  name: storageAccountName
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

// Scope: the storage account. The Functions host creates and uses its own containers
// (azure-webjobs-hosts, azure-webjobs-secrets) next to the deployment container, so this is the
// narrowest scope that lets the host start; it is also what the Flex Consumption samples use.
resource blobDataOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storageAccount.id, principalId, storageBlobDataOwnerRoleId)
  scope: storageAccount
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataOwnerRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// Scope: the storage account, whose only table is Referrals. A table-level scope would be narrower,
// but the app calls Create Table (idempotently) at startup, and that request goes to the account's
// /Tables endpoint, not to the table, so a table-scoped assignment may not authorize it.
resource tableDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storageAccount.id, principalId, storageTableDataContributorRoleId)
  scope: storageAccount
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageTableDataContributorRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// Scope: the Application Insights component only.
resource metricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(applicationInsights.id, principalId, monitoringMetricsPublisherRoleId)
  scope: applicationInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', monitoringMetricsPublisherRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}
