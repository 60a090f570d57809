metadata description = 'Storage account for the Referrals table, the Functions host and the Flex Consumption deployment package. Entra ID only: shared keys are disabled.'

@description('Name of the storage account: 3-24 lowercase letters and digits, globally unique.')
@minLength(3)
@maxLength(24)
param name string

@description('Azure region of the storage account.')
param location string = resourceGroup().location

@description('Tags applied to every resource in this module.')
param tags object = {}

@description('Replication SKU. Standard_LRS is the cheapest; choose a zone- or geo-redundant SKU for production data.')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
  'Standard_RAGRS'
  'Standard_RAGZRS'
])
param skuName string = 'Standard_LRS'

@description('Name of the table that stores the referrals.')
@minLength(3)
@maxLength(63)
param tableName string = 'Referrals'

@description('Name of the blob container that receives the Flex Consumption deployment package.')
@minLength(3)
@maxLength(63)
param deploymentContainerName string

@description('Days that deleted blobs and deleted containers stay recoverable (soft delete).')
@minValue(1)
@maxValue(365)
param softDeleteRetentionDays int = 7

resource storageAccount 'Microsoft.Storage/storageAccounts@2024-01-01' = {
  // checkov:skip=CKV_AZURE_35:No VNet integration in this template: the Flex app reaches storage over its public endpoint; shared keys are off and every caller needs an Entra RBAC role.
  // checkov:skip=CKV_AZURE_59:Same reason as CKV_AZURE_35: public endpoint required without VNet integration; access is Entra-only.
  // checkov:skip=CKV_AZURE_206:Replication is the skuName parameter; Standard_LRS is the documented default for non-production environments.
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: skuName
  }
  properties: {
    accessTier: 'Hot'
    allowBlobPublicAccess: false
    allowCrossTenantReplication: false
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2024-01-01' = {
  parent: storageAccount
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: softDeleteRetentionDays
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: softDeleteRetentionDays
    }
  }
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2024-01-01' = {
  parent: blobService
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

// The table service has no soft delete. The Referrals table is created here, so the app's own
// create-if-missing (once per instance, before its first write or query) finds it in place.
resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2024-01-01' = {
  parent: storageAccount
  name: 'default'
}

resource referralsTable 'Microsoft.Storage/storageAccounts/tableServices/tables@2024-01-01' = {
  parent: tableService
  name: tableName
}

output name string = storageAccount.name
output resourceId string = storageAccount.id
output tableName string = referralsTable.name
output deploymentContainerName string = deploymentContainer.name
// Without a trailing slash: the exact form the app reads from REFERRALS_STORAGE__tableServiceUri.
output tableEndpoint string = 'https://${storageAccount.name}.table.${environment().suffixes.storage}'
output blobEndpoint string = storageAccount.properties.primaryEndpoints.blob
